#!/usr/bin/env bash
# Downloads the Intel Image Classification dataset (Kaggle: puneet6060/intel-image-classification)
# into data/intel in the layout train.py expects. Needs internet and a Kaggle API token
# (~/.kaggle/kaggle.json, https://www.kaggle.com/docs/api). About 350 MB.
set -euo pipefail
dest=${1:-data/intel}
mkdir -p "$dest"
python -m pip install --quiet kaggle
python -m kaggle datasets download -d puneet6060/intel-image-classification -p "$dest"
python -m zipfile -e "$dest/intel-image-classification.zip" "$dest"
rm "$dest/intel-image-classification.zip"
# The archive nests each split in itself (seg_train/seg_train/<class>); imgclf.data handles both.
echo "done: $dest/seg_train, $dest/seg_test, $dest/seg_pred"
