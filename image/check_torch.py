"""Fail the image build when the installed torch is not the requested build (cuda or cpu).

An offline wheelhouse holds the CPU build; without this check, a CUDA build pointed at it would
silently produce a CPU-only image.
"""

import sys

import torch

variant = sys.argv[1]
is_cuda = torch.version.cuda is not None
if is_cuda != (variant == "cuda"):
    sys.exit(
        f"torch {torch.__version__} is not the {variant} build. For an offline build pass "
        "--build-arg TORCH_VARIANT=cpu; for the CUDA image, build online with an empty wheelhouse."
    )
if variant == "cuda":  # data.decode=device decodes JPEGs with torchvision's nvJPEG
    import torchvision.io  # a torchvision built for another torch fails here

    print(f"torchvision {torchvision.__version__}")
print(f"torch {torch.__version__} ({variant})")
