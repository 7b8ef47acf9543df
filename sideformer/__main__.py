from sideformer.cli import main

raise SystemExit(main())
