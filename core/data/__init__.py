"""Training data: the declared data spec, the sources it names, leak-free splits, augmentation and the
synthetic images tests use.
"""
