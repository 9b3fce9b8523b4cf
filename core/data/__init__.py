"""Training data.

Open, by task:

* ``spec``: the declared data spec (``data_specs/*.json``): sources, label mapping, grouping, splits;
* ``sources``: every declared source indexed into records and preprocessed images (cached);
* ``dataset``: labelled folder trees, one decode pass cached on disk;
* ``splits``: leak-free train / validation / test parts by near-duplicate group and by case;
* ``augment``: training-time augmentation; ``synthetic``: generated images for tests and the OOD measurement.
"""
