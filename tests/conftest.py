pytest_plugins = ["tests.fixtures.postgres", "tests.fixtures.projects", "tests.fixtures.shop",
                  "tests.fixtures.processes", "tests.fixtures.chat_stub",
                  "tests.fixtures.standalone", "tests.fixtures.stub"]
