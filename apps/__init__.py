"""What the apps draw: table rows, figures and sentences made from the package's data."""
