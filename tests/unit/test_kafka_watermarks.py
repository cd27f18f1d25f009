"""stocksync.kafka.watermarks asks again while a partition's leadership settles, and only then.

A single KRaft node on a loaded box answers NOT_LEADER_FOR_PARTITION for a moment (a new topic, or the broker
briefly fenced by its own controller); CI once failed a subscriber test on exactly that answer. The partition
here is a stand-in object with the one method `watermarks` calls: the logic under test is the retry rule."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from stocksync.kafka import leadership_settling, watermarks


class Answers:
    """get_watermark_offsets answers from a script: exceptions are raised, tuples returned."""

    def __init__(self, *script: object) -> None:
        self.script = list(script)
        self.calls = 0

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        self.calls += 1
        answer = self.script.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, tuple)
        return answer


def kafka_error(code: int) -> KafkaException:
    return KafkaException(KafkaError(code))


TP = TopicPartition("t", 0)


def test_asks_again_while_leadership_settles() -> None:
    broker = Answers(
        kafka_error(KafkaError.NOT_LEADER_FOR_PARTITION),
        kafka_error(KafkaError.LEADER_NOT_AVAILABLE),
        (3, 17),
    )
    assert watermarks(broker, TP, timeout_s=5) == (3, 17)  # type: ignore[arg-type]
    assert broker.calls == 3


def test_any_other_error_is_raised_at_once() -> None:
    broker = Answers(kafka_error(KafkaError.TOPIC_AUTHORIZATION_FAILED), (0, 1))
    with pytest.raises(KafkaException) as raised:
        watermarks(broker, TP, timeout_s=5)  # type: ignore[arg-type]
    assert raised.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert broker.calls == 1


def test_a_leader_still_missing_after_the_deadline_is_raised() -> None:
    broker = Answers(*[kafka_error(KafkaError.NOT_LEADER_FOR_PARTITION)] * 1000)
    with pytest.raises(KafkaException) as raised:
        watermarks(broker, TP, timeout_s=0.3)  # type: ignore[arg-type]
    assert raised.value.args[0].code() == KafkaError.NOT_LEADER_FOR_PARTITION
    assert 2 <= broker.calls < 1000


@pytest.mark.parametrize(
    ("code", "settling"),
    [
        (KafkaError.NOT_LEADER_FOR_PARTITION, True),
        (KafkaError.LEADER_NOT_AVAILABLE, True),
        (KafkaError.UNKNOWN_TOPIC_OR_PART, True),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, False),
    ],
)
def test_which_answers_are_settling(code: int, settling: bool) -> None:
    assert leadership_settling(kafka_error(code)) is settling
    assert not leadership_settling(ValueError("not Kafka"))
