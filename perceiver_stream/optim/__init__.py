"""Our Lamb, exact under sharding, and the optimizer configuration of the yaml."""

from perceiver_stream.optim.build import OptimizerConfig, build_optimizer, param_groups
from perceiver_stream.optim.lamb import Lamb

__all__ = ["Lamb", "OptimizerConfig", "build_optimizer", "param_groups"]
