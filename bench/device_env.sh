# Sourced by the bench scripts on the GPU device (bash bench/<script>.sh from the repo root): puts the
# packages carried in .whl/ on PYTHONPATH. .whl/ holds (ignored by git, carried by the device tool):
#   unsloth-site.tgz        ../shared/wheels: unsloth + bitsandbytes, trl 1.15, datasets 4.8 and the rest
#   liger_kernel-*.whl      ../shared/wheels; pytest, pluggy, iniconfig wheels for `pytest -m gpu`
#   llama3/                 tokenizer.json.gz, tokenizer_config.json, special_tokens_map.json (Llama 3)
#   ko_alpaca_data.json.gz  the KoAlpaca subset of ../shared/data
#   peer_baselines.py, real_length_sft.py   ../shared/bench: the seed recipe and Unsloth references
# Once per machine: a call that runs several bench scripts sources this each time (the unpacking takes ~40 s).
if [ ! -e /tmp/site/.installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  mkdir -p /tmp/u && tar xzf .whl/unsloth-site.tgz -C /tmp/u && touch /tmp/site/.installed
fi
export PYTHONPATH=/tmp/site:/tmp/u/site:$PWD/src HF_HUB_OFFLINE=1 TQDM_DISABLE=1 PYTHONUNBUFFERED=1 \
  UNSLOTH_DISABLE_STATISTICS=1
mkdir -p /tmp/tok /tmp/raw
cp .whl/llama3/*.json /tmp/tok/ && gunzip -c .whl/llama3/tokenizer.json.gz > /tmp/tok/tokenizer.json
gunzip -c .whl/ko_alpaca_data.json.gz > /tmp/raw/ko_alpaca_data.json
