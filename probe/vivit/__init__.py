"""The ViViT maths on the backends' per-group quantities (torch only, no autograd plumbing).

``factors`` and ``conv_factors`` (per-parameter rows of the GGN factor, structured or
expanded), ``losses`` (the loss Hessian's symmetric factors), ``gram`` (folding them into a
group's Gram matrix), ``spectrum``, ``directions`` and ``statistics``.
"""
