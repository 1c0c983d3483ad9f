"""Every figure of the series (above ``experiments``): the one palette (``style``) and one module per
picture; a picture of an experiment has the experiment's own name (``pictures.kv_sweep`` draws
``experiments.kv_sweep``).
"""
