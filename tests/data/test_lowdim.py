from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from balanced_pi0.data.lowdim import load_lowdim
from balanced_pi0.errors import InputError

from .conftest import fake_episodes, write_raw


def test_columns_match_what_was_written(raw_dataset):
    root, episodes = raw_dataset
    low = load_lowdim(root)
    lengths = [len(e.action) for e in episodes]
    assert low.state.dtype == np.float32 and low.action.dtype == np.float32
    np.testing.assert_array_equal(low.action, np.concatenate([e.action for e in episodes]))
    np.testing.assert_array_equal(low.state, np.concatenate([e.state for e in episodes]))
    np.testing.assert_array_equal(low.episodes, np.arange(len(episodes)))
    np.testing.assert_array_equal(low.ep_stop - low.ep_start, lengths)
    np.testing.assert_array_equal(low.ep_start, np.cumsum([0, *lengths[:-1]]))
    np.testing.assert_array_equal(low.frame_index, np.concatenate([np.arange(n) for n in lengths]))
    np.testing.assert_array_equal(low.episode_index, np.repeat(np.arange(len(episodes)), lengths))
    assert low.tasks == [e.task for e in episodes]
    assert [low.task_names[i] for i in low.task_index[low.ep_start]] == low.tasks
    assert low.fps == 10.0


def test_matches_lerobot_reader(raw_dataset):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root, _ = raw_dataset
    low = load_lowdim(root)
    ds = LeRobotDataset("test/raw", root=root)
    for i in range(len(ds)):
        item = ds[i]
        row = int(np.flatnonzero(low.index == int(item["index"]))[0])
        np.testing.assert_array_equal(low.action[row], item["action"].numpy())
        np.testing.assert_array_equal(low.state[row], item["observation.state"].numpy())
        assert low.task_names[low.task_index[row]] == item["task"]


def test_select_keeps_rows_of_chosen_episodes(raw_dataset):
    root, episodes = raw_dataset
    low = load_lowdim(root)
    sub = low.select([2, 0])
    np.testing.assert_array_equal(sub.episodes, [0, 2])
    np.testing.assert_array_equal(sub.action, np.concatenate([episodes[0].action, episodes[2].action]))
    np.testing.assert_array_equal(sub.ep_start, [0, len(episodes[0].action)])
    assert sub.tasks == [episodes[0].task, episodes[2].task]
    with pytest.raises(InputError, match=r"episode\(s\) \[7\]"):
        low.select([7])


def test_missing_info_names_the_file(tmp_path):
    with pytest.raises(InputError, match=r"meta/info\.json: not found"):
        load_lowdim(tmp_path)


def test_missing_feature_names_the_key(raw_dataset, tmp_path):
    root = shutil.copytree(raw_dataset[0], tmp_path / "ds")
    info = json.loads((root / "meta/info.json").read_text())
    del info["features"]["observation.state"]
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match=r"missing feature 'observation\.state'"):
        load_lowdim(root)


def test_action_width_must_match_layout(raw_dataset):
    with pytest.raises(InputError, match=r"'action' has shape \[23\].*expects \[32\]"):
        load_lowdim(raw_dataset[0], action_dim=32)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # LeRobot's own stats see the NaN first
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_action_names_episode_frame_dim(tmp_path, bad):
    episodes = fake_episodes(lengths=(4, 6), cameras=())
    episodes[1].action[3, 9] = bad
    root = write_raw(tmp_path / "ds", episodes)
    with pytest.raises(InputError, match=r"'action' is .* at episode 1 frame 3 dim 9"):
        load_lowdim(root)


def test_episode_without_rows_is_an_error(raw_dataset, tmp_path):
    root = shutil.copytree(raw_dataset[0], tmp_path / "ds")
    path = next((root / "data").glob("*/*.parquet"))
    table = pq.read_table(path)
    keep = pa.compute.not_equal(table["episode_index"], 1)
    pq.write_table(table.filter(keep), path)
    with pytest.raises(InputError, match=r"episode 1 has 0 data rows"):
        load_lowdim(root)
