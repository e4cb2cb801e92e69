"""medlens.app."""
