"""taoflow: TAO SSD training-to-deployment pipelines for Jetson Nano fleets."""

__version__ = "0.1.0"
