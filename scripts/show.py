"""Print chosen fields of a JSONL file as aligned columns, plus the engine that served each row.

    python scripts/show.py out/capital-quiz.jsonl country answer
"""

import json
import sys

path, *fields = sys.argv[1:]
with open(path, encoding="utf-8") as fh:
    rows = sorted((json.loads(line) for line in fh if line.strip()), key=lambda r: r["_row"])
for row in rows:
    cells = [str(row.get(f, "")) for f in fields]
    print("  ".join(f"{c:<20}" for c in cells), f"(served by {row['_meta']['served_by']})")
