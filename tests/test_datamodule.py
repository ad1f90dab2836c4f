"""perpo.data.datamodule: validation shards by rank."""


def test_val_shards_cover_every_record_once_and_keep_ranks_in_step():
    """5 records on 2 ranks: rank 0 scores 0, 2, 4; rank 1 scores 1, 3 and a padded copy that
    metrics skip, so both run 3 items (same number of batches) and each record counts once."""
    from perpo.data.datamodule import PAD, ValShard

    records = [{"id": i} for i in range(5)]
    shards = [[ValShard(records, r, 2)[i] for i in range(len(ValShard(records, r, 2)))] for r in (0, 1)]
    assert [len(s) for s in shards] == [3, 3]
    counted = sorted(r["id"] for s in shards for r in s if not r.get(PAD))
    assert counted == [0, 1, 2, 3, 4]
    assert [r.get(PAD, False) for r in shards[1]] == [False, False, True]
    assert len(ValShard(records[:1], 1, 2)) == 1 and ValShard(records[:1], 1, 2)[0][PAD]  # a rank with none still steps
