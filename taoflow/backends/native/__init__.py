"""taoflow native backend: TAO SSD specs and CLI on PyTorch (executor B)."""
