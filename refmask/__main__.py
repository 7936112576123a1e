from refmask.cli import main

raise SystemExit(main())
