"""cvaegan: a PyTorch implementation of CVAE-GAN (Bao et al., ICCV 2017) with a Gradio demo."""

__version__ = "0.1.0"

from .config import ModelConfig, TrainConfig  # noqa: E402
from .models import CVAEGAN  # noqa: E402

__all__ = ["CVAEGAN", "ModelConfig", "TrainConfig", "__version__"]
