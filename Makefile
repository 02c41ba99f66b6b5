# The same two commands as the README; make is optional, the scripts are what run.
.PHONY: dev test
dev:
	./scripts/dev
test:
	./scripts/test
