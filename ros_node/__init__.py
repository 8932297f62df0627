"""ROS 2 node publishing VISA masks."""
