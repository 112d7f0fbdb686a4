"""An apprise custom notification: `hyperionfile:///abs/path/file.jsonl` appends one JSON line
per notification. It lets the example show hyperion's notifications without any network.

Load it with `notify.plugin_paths` in hyperion.yaml (apprise scans the folder for @notify).
"""

import json
import time

from apprise.decorators import notify


@notify(on="hyperionfile", name="hyperion example: append to a local file")
def append_to_file(body, title, notify_type, meta, *args, **kwargs):
    # apprise parses hyperionfile:///a/b.jsonl as host "a" and path "/b.jsonl".
    path = "/" + (meta.get("host") or "") + (meta.get("fullpath") or "")
    if path.rstrip("/") == "":
        return False
    line = json.dumps({"at": time.time(), "type": str(notify_type), "title": title,
                       "body": body})
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
    return True
