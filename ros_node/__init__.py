"""ROS 2 node publishing VISA masks. Only ``node`` and ``probe`` import rclpy (see README.md)."""
