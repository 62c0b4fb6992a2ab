"""simclr_ad: SimCLR pretraining and few-label fine-tuning for brain MRI."""

__version__ = "0.1.0"
