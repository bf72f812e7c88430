"""What an upload gives away: DP noise on the memory (`dp`) and the audit that attacks it."""
