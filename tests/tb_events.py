"""Reading TensorBoard event files back in the tests: TFRecord framing
(length, its CRC, the record, its CRC) around `Event` protos, parsed with
tensorboardX's own protobuf classes."""

import glob
import os
import struct


def scalars(logdir):
    """{tag: [(step, value), ...]} of every event file under `logdir`."""
    from tensorboardX.proto import event_pb2
    out = {}
    for path in sorted(glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True)):
        with open(path, "rb") as f:
            data = f.read()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out
