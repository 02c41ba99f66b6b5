pytest_plugins = ["tests.fixtures.postgres", "tests.fixtures.projects", "tests.fixtures.shop",
                  "tests.fixtures.processes", "tests.fixtures.stub"]
