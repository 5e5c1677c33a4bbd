"""End-of-day reports from the audit log: statements per account (`statements`) and their
self-contained HTML (`html`)."""
