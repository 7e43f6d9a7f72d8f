# `make package`: the installable application (bundle, .tar.gz, .deb), smoke-tested. See packaging/.
.PHONY: package test studio
package:
	bash packaging/build_package.sh
test:
	bash packaging/test.sh
studio:
	bash packaging/studio.sh
