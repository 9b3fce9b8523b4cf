"""Where the model looked: Grad-CAM family heatmaps for slices and series.
"""
