"""A user's own reward, plugged in from config (``+reward.fn._target_=tests.user_rewards.length_reward``)
by tests that need every list to spread, whatever the tiny model answers."""


def length_reward(completion: str, record) -> float:
    return (len(completion) % 7) / 6


def length_reward_flat_at(completion: str, record) -> float:
    """``length_reward``, but the same reward for every answer (a list the spread filter drops) for
    the train records at the positions listed in $PERPO_TEST_FLAT_POSITIONS (comma-separated;
    synthetic ids end with the record's position)."""
    import os

    flat = {int(p) for p in os.environ.get("PERPO_TEST_FLAT_POSITIONS", "").split(",") if p}
    if "-train-" in record["id"] and int(record["id"].rsplit("-", 1)[1]) in flat:
        return 0.5
    return length_reward(completion, record)
