"""Token grants and the per-token rate limit, with a clock the test moves."""

from __future__ import annotations

from oms.api.auth import PeerLimits
from oms.domain.access import Grant, TokenBucket


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    now = [100.0]
    bucket = TokenBucket(rate_per_s=2.0, burst=3, clock_s=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one call's worth at 2 a second
    assert [bucket.take(), bucket.take()] == [True, False]
    now[0] += 60  # refills up to the burst, no further
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_grants() -> None:
    bot = Grant("bot", frozenset({"alice"}))
    assert bot.may_act_for("alice") and not bot.may_act_for("bob")
    assert not bot.may_act_for("") and not bot.may_publish_prices
    admin = Grant("ops", admin=True)
    assert admin.may_act_for("bob") and admin.may_act_for("") and admin.may_publish_prices
    feeder = Grant("feeder", publish_prices=True)
    assert feeder.may_publish_prices and not feeder.may_act_for("alice")


def test_calls_without_a_token_are_limited_per_address_whatever_the_port() -> None:
    now = [0.0]
    limits = PeerLimits(rate_per_s=1.0, burst=2, clock_s=lambda: now[0])
    assert limits.take("ipv4:10.0.0.7:40001") and limits.take("ipv4:10.0.0.7:40002")
    assert not limits.take("ipv4:10.0.0.7:40003")  # another port, the same address
    assert limits.take("ipv6:[::1]:40001")  # another address: a bucket of its own
    now[0] = 1.0
    assert limits.take("ipv4:10.0.0.7:40004") and not limits.take("ipv4:10.0.0.7:40005")


def test_an_ipv6_client_is_limited_per_64_and_a_mapped_ipv4_one_per_address() -> None:
    limits = PeerLimits(rate_per_s=1.0, burst=1, clock_s=lambda: 0.0)
    assert limits.take("ipv6:[2001:db8:0:1::7]:40001")
    # Another address of the same /64 (a host picks any it likes): the same bucket.
    assert not limits.take("ipv6:[2001:db8:0:1:ffff::1]:40002")
    assert limits.take("ipv6:[2001:db8:0:2::7]:40003")  # another /64
    # IPv4 clients of a dual-stack listener arrive mapped into ::ffff:0:0/96, one /64.
    assert limits.take("ipv6:[::ffff:10.0.0.7]:40004")
    assert limits.take("ipv6:[::ffff:10.0.0.8]:40005")
    assert not limits.take("ipv4:10.0.0.7:40006")  # the same address as the mapped one
