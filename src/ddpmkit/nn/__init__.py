"""The ε-prediction U-Net: `UNet.from_config(settings.model)`, and `count_parameters`."""

from ddpmkit.nn.unet import UNet, count_parameters

__all__ = ["UNet", "count_parameters"]
