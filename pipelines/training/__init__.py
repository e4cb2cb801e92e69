"""Training for every task: the two phases (:mod:`~medlens.pipelines.training.phases`) and their callbacks
(:mod:`~medlens.pipelines.training.callbacks`). The entry point is :func:`medlens.pipelines.train.train`.
"""
