#!/usr/bin/env python3
"""The same flags for Bunting (flagd's format) and for Unleash Edge (Unleash's client features),
for scripts/bench-ofrep: N boolean flags, each on for users in three countries, else for a 50 %
rollout by user id. Usage: fixtures.py N OUT_DIR (writes flagd-N.json and unleash-N.json)."""

import json
import sys

COUNTRIES = ["NO", "SE", "DK"]


def flagd(n):
    flags = {}
    for i in range(n):
        key = f"flag-{i:03d}"
        flags[key] = {
            "state": "ENABLED",
            "defaultVariant": "off",
            "variants": {"on": True, "off": False},
            "targeting": {
                "if": [
                    {"in": [{"var": "country"}, COUNTRIES]},
                    "on",
                    {"fractional": [["on", 50], ["off", 50]]},
                ]
            },
        }
    return {"flags": flags}


def unleash(n):
    features = []
    for i in range(n):
        key = f"flag-{i:03d}"
        features.append(
            {
                "name": key,
                "type": "release",
                "project": "default",
                "enabled": True,
                "strategies": [
                    {
                        "name": "default",
                        "constraints": [
                            {"contextName": "country", "operator": "IN", "values": COUNTRIES}
                        ],
                    },
                    {
                        "name": "flexibleRollout",
                        "parameters": {"rollout": "50", "stickiness": "userId", "groupId": key},
                    },
                ],
                "variants": [],
            }
        )
    return {"version": 2, "features": features}


def main():
    n, out = int(sys.argv[1]), sys.argv[2]
    with open(f"{out}/flagd-{n}.json", "w") as f:
        json.dump(flagd(n), f)
    with open(f"{out}/unleash-{n}.json", "w") as f:
        json.dump(unleash(n), f)


if __name__ == "__main__":
    main()
