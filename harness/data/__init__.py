"""The data layer: what a task's inputs are and how they reach a model.

- :mod:`~tlbench.data.splits` — :class:`Task` and :class:`Split`: a task's seeded splits and what
  identifies their content;
- :mod:`~tlbench.data.views` — :class:`ImageView`: a split's image files, decoded lazily, and what
  an unreadable image says;
- :mod:`~tlbench.data.preprocess` — resizing, cropping, flipping and normalising, the same for
  files and the image cache;
- :mod:`~tlbench.data.reader` — :class:`Reader`: batches of a split on the device, from tensors,
  the image cache or DataLoader workers;
- :mod:`~tlbench.data.imagecache` — images decoded once into memory-mapped files.
"""
