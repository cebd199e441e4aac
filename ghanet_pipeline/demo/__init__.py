"""The built-in synthetic cohort (`cohort`: clinical + genomics with a planted signal), synthetic bags
for tests (`bags`), and the end-to-end demo behind `make demo` (`run`)."""
