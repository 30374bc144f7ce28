"""The chat: conversations, sampling settings, the answer in flight, the server status."""
