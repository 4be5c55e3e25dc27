"""Write a copy of params.yaml with dotted overrides: python bench/set_params.py OUT key=value ...

Values are YAML (`train.packing=true`, `lora.lora_r=16`). For runs where DVC and Hydra are not
installed (the GPU benchmark machine); elsewhere use `kotune params` or `dvc exp run -S`. PARAMS names
another params.yaml to start from (an earlier commit's, for a baseline run).
"""

import os
import sys
from pathlib import Path

import yaml

params = yaml.safe_load(Path(os.environ.get("PARAMS", "params.yaml")).read_text(encoding="utf-8"))
for override in sys.argv[2:]:
    key, value = override.split("=", 1)
    section, field = key.split(".", 1)
    params[section][field] = yaml.safe_load(value)
Path(sys.argv[1]).write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
