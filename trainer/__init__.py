"""trainer: produces the fast model, the reasoner and the release directory."""
