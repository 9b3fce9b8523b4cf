"""How good the model is: metrics with intervals, evaluation of a bundle on labelled data and on its
held-out parts per source, the dataset audit and the product's written targets.
"""
