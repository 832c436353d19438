"""TRL's packing as the reference for frugal's whole-record windows (src/data/loader.cpp).

  python packing_reference.py IN.json SEQ_LENGTH OUT.json
      IN.json: records (lists of token ids) in file order -> OUT.json: the rows of TRL's
      pack_dataset(strategy="bfd") at SEQ_LENGTH (tokens a row holds), in its order: each row the
      records it packed, one after another. All records in one map batch, as frugal packs a shard.
"""
import json
import sys

from datasets import Dataset
from trl import pack_dataset

records = json.load(open(sys.argv[1]))
packed = pack_dataset(Dataset.from_dict({"input_ids": records}), int(sys.argv[2]), strategy="bfd",
                      map_kwargs={"batch_size": len(records)})
json.dump([row["input_ids"] for row in packed], open(sys.argv[3], "w"))
