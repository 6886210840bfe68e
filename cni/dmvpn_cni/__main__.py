"""``python3 -m dmvpn_cni``: the plugin without the launcher script (for development)."""

import sys

from dmvpn_cni.plugin import main

sys.exit(main())
