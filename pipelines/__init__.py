"""medlens.pipelines."""
