"""ImageNet normalisation, on the 0-1 scale of ``ToTensor`` (DALI works on 0-255: multiply by 255)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
