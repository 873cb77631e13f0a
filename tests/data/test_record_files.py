import io
import os
import re
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ssd.data import records
from ssd.data.input_fn import make_input_fn
from ssd.data.record_files import DataError, check_record_files
from ssd.modes import ModeKeys
from ssd.data.record_files import MAX_OPEN_FILES, data_error_from
from tests.data.test_data import tiny_config, write_shards


def record_offsets(data: bytes) -> list[int]:
    """Start of every record, from the TFRecord framing: 8-byte little-endian length, 4-byte
    length checksum, data, 4-byte data checksum."""
    offsets, position = [], 0
    while position < len(data):
        offsets.append(position)
        position += 12 + struct.unpack("<Q", data[position:position + 8])[0] + 4
    assert position == len(data)
    return offsets


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_shard_names_state_the_converter_format_once():
    assert records.shard_name("voc07_test", 3, 17) == "voc07_test-00003-of-00017"
    assert records.parse_shard_name("/x/voc07_test-00003-of-00017") == ("voc07_test", 3, 17)
    assert records.parse_shard_name("a-b-7-of-120") == ("a-b", 7, 120)  # other tools' digits
    assert records.parse_shard_name("voc07_test_summary.json") is None
    assert records.summary_name("voc07_test") == "voc07_test_summary.json"


def test_up_front_check_accepts_good_files_and_describes_them(tmp_path):
    write_shards(tmp_path, num_records=5, num_shards=2)
    (tmp_path / records.shard_name("empty", 0, 1)).write_bytes(b"")
    files = sorted(str(p) for p in tmp_path.iterdir())
    assert len(files) == 3
    checked = check_record_files(files)
    assert [f.path for f in checked] == files
    assert [f.size for f in checked] == [os.path.getsize(f) for f in files]
    for f in checked[:2]:  # data-00000-of-00002 (3 records), data-00001-of-00002 (2)
        data = open(f.path, "rb").read()
        offsets = record_offsets(data)
        assert f.first_record_bytes == offsets[1] - 16
        expected = round(len(data) / offsets[1])
        assert f.estimated_records == expected and abs(expected - len(offsets)) <= 1
    assert checked[2].size == 0 and checked[2].estimated_records == 1  # empty-00000-of-00001


def damaged_at_start(tmp_path):
    write_shards(tmp_path, num_records=4, num_shards=1)
    good = (tmp_path / records.shard_name("data", 0, 1)).read_bytes()
    flipped = bytearray(good)
    flipped[40] ^= 0x10  # inside the first record's data: its checksum fails
    path = tmp_path / "plain-00000-of-00001"
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(b"\x00\x01 not a protocol buffer \xff")
    not_examples = path.read_bytes()
    return {
        "photo.jpg": (jpeg_bytes(), "not a TFRecord file"),
        "flipped-00000-of-00001": (bytes(flipped), "damaged at its start"),
        "cut-00000-of-00001": (good[:30], "damaged at its start"),
        "tiny-00000-of-00001": (good[:5], "damaged at its start"),
        "plain-00000-of-00001": (not_examples, "not image examples"),
    }


def test_up_front_check_names_the_bad_file(tmp_path):
    cases = damaged_at_start(tmp_path)
    good = str(tmp_path / records.shard_name("data", 0, 1))
    for name, (content, reason) in cases.items():
        path = tmp_path / "bad" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
        with pytest.raises(DataError, match=rf"{re.escape(str(path))}: .*{reason}"):
            check_record_files([good, str(path)])
        # the input functions refuse before building anything (DataError is a ValueError)
        with pytest.raises(ValueError, match=re.escape(str(path))):
            make_input_fn([good, str(path)], tiny_config(), ModeKeys.TRAIN)
    with pytest.raises(DataError, match="all 2 files are empty"):
        (tmp_path / "e1").write_bytes(b"")
        (tmp_path / "e2").write_bytes(b"")
        check_record_files([str(tmp_path / "e1"), str(tmp_path / "e2")])


def damage(path, how: str, record: int) -> None:
    """Flips one byte inside the data of `record`, or cuts the file inside that record."""
    data = bytearray(path.read_bytes())
    start = record_offsets(bytes(data))[record]
    if how == "flipped":
        data[start + 12 + 20] ^= 0x01
    else:
        del data[start + 12 + 20:]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flipped", "truncated"])
@pytest.mark.parametrize("mode", [ModeKeys.TRAIN, ModeKeys.EVAL])
def test_a_record_damaged_inside_a_shard_fails_naming_the_file(tmp_path, how, mode):
    truth = write_shards(tmp_path, num_records=15, num_shards=3)
    shard = tmp_path / records.shard_name("data", 1, 3)
    damage(shard, how, record=3)  # the shard holds records 1, 4, 7, 10, 13 of the writing order
    check_record_files([str(shard)])  # the start is fine: only reading finds it
    config = tiny_config(**{"data.augmentation": "none", "data.seed": 3})
    dataset = make_input_fn(tmp_path, config, mode)()
    with pytest.raises(tf.errors.OpError) as raised:
        for _ in dataset.take(50):  # more than an epoch: the damage is always reached
            pass
    error = data_error_from(raised.value)
    assert isinstance(error, DataError)
    message = str(error)
    assert message.startswith(f"{shard}: a record is damaged (truncated or corrupted) after 3 "
                              f"readable records")
    # in training each shard starts at a random record: the last one read is one of the three
    last = "'img7.jpg'" if mode == ModeKeys.EVAL else r"'img[147]\.jpg'"
    assert re.search(rf"the last one read: image {last}", message) and "id007" in truth
    assert "one image in every 3 of the conversion's order, from image 2 on" in message
    assert str(tmp_path / "data_summary.json") in message
    assert data_error_from(tf.errors.DataLossError(None, None, "corrupted record at 12")) is None


def shard_of(image_id: bytes, num_shards: int) -> int:
    return int(image_id.decode()[2:]) % num_shards  # write_shards: record i in shard i % n


def test_training_reads_every_shard_at_once_in_a_new_file_order_each_pass(tmp_path):
    num_shards = 20  # more files than the former 16 read at once
    assert num_shards <= MAX_OPEN_FILES
    write_shards(tmp_path, num_records=3 * num_shards, num_shards=num_shards)
    # no record-level shuffle: the batches show the file reading order itself
    config = tiny_config(**{"data.augmentation": "none", "data.seed": 5,
                            "data.shuffle_buffer": 1, "train.batch_size": num_shards})

    def image_numbers():
        batches = make_input_fn(tmp_path, config, ModeKeys.TRAIN)().take(6)  # two passes
        return [[int(i.decode()[2:]) for i in features["image_id"].numpy()]
                for features, _ in batches]

    batches = image_numbers()
    for batch in batches:
        # one record of every shard in each batch (write_shards: record i in shard i % n)
        assert sorted(i % num_shards for i in batch) == list(range(num_shards))
    starts = []
    for first in (0, 3):
        one_pass = batches[first:first + 3]
        assert sorted(sum(one_pass, [])) == list(range(3 * num_shards))  # each record once
        # every shard's records in their written order, from some record on, wrapping around
        rows = {i % num_shards: [] for i in one_pass[0]}
        for batch in one_pass:
            for i in batch:
                rows[i % num_shards].append(i // num_shards)
        assert all(r in ([0, 1, 2], [1, 2, 0], [2, 0, 1]) for r in rows.values())
        starts.append([rows[shard][0] for shard in range(num_shards)])
    assert len(set(starts[0])) > 1  # shards start at different records
    assert starts[0] != starts[1]  # and at others on the next pass
    orders = [[i % num_shards for i in batches[b]] for b in (0, 1, 3)]
    assert orders[0] == orders[1]  # one file order within a pass
    assert orders[0] != orders[2]  # a new one on the next pass
    assert orders[0] != list(range(num_shards))  # shuffled, not sorted
    assert image_numbers() == batches  # data.seed fixes the order
