#!/usr/bin/env python3
"""Drives a Starling node's NATS listener with nats-py, the NATS Python client
(pip install nats-py), through its public API: connect, pub/sub, wildcards,
queue groups, headers, request/reply, no responders, flush, unsubscribe after
N, max payload, drain. Prints "ok" and exits 0 when everything held.

    scripts/nats-py-check.py [nats://127.0.0.1:4222]
"""

import asyncio
import sys

import nats
from nats.errors import MaxPayloadError, NoRespondersError

WAIT = 10


async def main(url):
    nc = await nats.connect(url, name="nats-py-check")
    assert nc.max_payload == 1 << 20, nc.max_payload

    # Wildcards and headers.
    star = await nc.subscribe("py.*")
    full = await nc.subscribe("py.>")
    await nc.publish("py.a", b"1", headers={"ce-type": "t"})
    await nc.publish("py.a.b", b"2")
    await nc.flush()
    msg = await star.next_msg(timeout=WAIT)
    assert (msg.subject, msg.data, msg.headers) == ("py.a", b"1", {"ce-type": "t"}), msg
    assert [(await full.next_msg(timeout=WAIT)).data for _ in range(2)] == [b"1", b"2"]
    # (Drain waits for what these would still queue: done with them.)
    await star.unsubscribe()
    await full.unsubscribe()

    # Queue groups: each message to one member.
    got = []

    async def member(m):
        got.append(m.data)

    for _ in range(2):
        await nc.subscribe("py.work", queue="workers", cb=member)
    for n in range(10):
        await nc.publish("py.work", str(n).encode())
    await nc.flush()
    for _ in range(WAIT * 100):
        if len(got) == 10:
            break
        await asyncio.sleep(0.01)
    assert sorted(got) == sorted(str(n).encode() for n in range(10)), got

    # Request/reply, and no responders.
    async def echo(m):
        await m.respond(b"echo " + m.data)

    await nc.subscribe("py.echo", cb=echo)
    reply = await nc.request("py.echo", b"hi", timeout=WAIT)
    assert reply.data == b"echo hi", reply
    try:
        await nc.request("nobody.here", b"x", timeout=WAIT)
        raise AssertionError("expected no responders")
    except NoRespondersError:
        pass

    # Unsubscribe after 2.
    two = await nc.subscribe("py.two")
    await two.unsubscribe(limit=2)
    for n in range(4):
        await nc.publish("py.two", str(n).encode())
    await nc.flush()
    assert [(await two.next_msg(timeout=WAIT)).data for _ in range(2)] == [b"0", b"1"]

    # Max payload.
    try:
        await nc.publish("py.big", b"x" * (nc.max_payload + 1))
        raise AssertionError("expected the max payload to be enforced")
    except MaxPayloadError:
        pass

    await nc.drain()
    print("ok")


asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "nats://127.0.0.1:4222"))
