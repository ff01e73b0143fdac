"""Write docs/configuration.md from the settings model (ultra_tasks/config.py).

python scripts/gen_config_doc.py          # rewrite the page
python scripts/gen_config_doc.py --check  # exit 1 if the page is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ultra_tasks.config_doc import DOC_PATH, render  # noqa: E402 (the repository root goes on the path first)


def main(argv: list[str]) -> int:
    path = ROOT / DOC_PATH
    text = render()
    if "--check" in argv:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            print(f"{DOC_PATH} is out of date: run scripts/gen_config_doc.py", file=sys.stderr)
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
