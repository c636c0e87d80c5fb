#!/usr/bin/env bash
# The wheels benchmarks/gpu_quality.sh installs on a GPU machine that cannot reach a package index:
# cryoDRGN 4.3.1 and the packages its command line imports that such a machine's image
# lacks (it holds torch, numpy, scipy, pandas, scikit-learn, matplotlib, seaborn, pyyaml, psutil,
# pyarrow, tqdm, ...), each pinned to the version benchmarks/quality.py's CPU virtual environment
# resolved (2026-12), for CPython $PYVER (default 3.12) on x86-64 Linux. They come from the
# package index as published; nothing of cryoDRGN is kept in this repository.
#
# Run where pip can reach the index, from the repository root:
#   bash benchmarks/gpu_wheels.sh [DIR]        (default DIR: .whl, ignored by git)
# then carry DIR to the GPU machine with the working tree. About 30 MB.

set -euo pipefail
cd "$(dirname "$0")/.." || exit 2
dest=${1:-.whl}
pyver=${PYVER:-3.12}
py=python3
[[ -x .venv/bin/python ]] && py=.venv/bin/python

# What cryoDRGN's command line loads (it imports every command module: train_vae and eval_vol
# need them all), less what the GPU image has (seaborn, werkzeug, jinja2, numba, ...); IPython's
# own imports and nbformat's jupyter-core as well, in case a code path of cryoDRGN reaches them.
packages=(
    cryodrgn==4.3.1 arrow==1.4.0 comm==0.2.3 fastjsonschema==2.22.3 fqdn==1.6.0 igraph==1.0.0
    ipython==9.19.1 ipywidgets==8.1.9 isoduration==20.11.0 jsonpointer==3.12 jsonschema==4.26.0
    jsonschema-specifications==2025.9.1 lark==1.3.1 nbformat==5.11.1 plotly==6.9.0 referencing==0.37.0
    rfc3339-validator==0.1.4 rfc3986-validator==0.1.1 rfc3987-syntax==1.1.0 rpds-py==2026.9.1
    texttable==1.7.2 traitlets==5.16.1 uri-template==1.3.0 wcwidth==0.9.5 webcolors==25.10.0
    jedi==0.20.1 parso==0.8.7 prompt_toolkit==3.0.53 stack_data==0.6.3 asttokens==3.0.2 executing==2.3.0
    pure_eval==0.2.4 matplotlib-inline==0.2.2 pexpect==4.9.0 ptyprocess==0.7.0 ipython-pygments-lexers==1.1.1
    jupyter-core==5.9.1 platformdirs==4.14.9 tzdata==2026.6
    flask==3.1.3 blinker==1.9.0 itsdangerous==2.2.0 cffi==2.1.1 pycparser==3.12 pynndescent==0.7.0 starfile==0.5.13
    umap-learn==0.5.12
)
mkdir -p "$dest"
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dest" "${packages[@]}"
echo "gpu_wheels: $(ls "$dest"/*.whl | wc -l) wheels, $(du -sh "$dest" | cut -f1), in $dest (CPython $pyver)"
