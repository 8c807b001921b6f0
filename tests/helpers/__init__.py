"""What tests share: builders, clients, servers on threads, process runners, samples.

The rule (issue 19): a test module imports test code only from here (tests.helpers.*);
never from another test module or from a conftest.py. Fixtures stay in conftest.py files
(a fixture several directories use lives in tests/conftest.py). tests/test_test_imports.py
checks it."""
