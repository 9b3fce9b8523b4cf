"""The network and everything that travels with it: architectures, the ImageNet start, the checkpoint and
model card, the device choice, precision back-ends (bf16, int8), test-time augmentation and the model registry.
"""
