"""SideFormer: SegFormer fine-tuning for walking-environment segmentation."""

__version__ = "0.1.0"
