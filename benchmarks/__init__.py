"""Load generators and side-by-side comparisons of serving configurations."""
