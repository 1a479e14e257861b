"""``python -m imgclf.local``: run the local stack (see ``imgclf.local.stack``)."""

from imgclf.local.stack import main

raise SystemExit(main())
