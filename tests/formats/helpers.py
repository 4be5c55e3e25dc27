from collections import Counter

from kotune.config import DataSection
from kotune.typed_config import Origin, build


def data_cfg(**values) -> DataSection:
    return build(DataSection, values, "data", Origin())


def convert(module, value, **cfg):
    stats = Counter()
    return module.convert(value, data_cfg(**cfg), stats), stats
